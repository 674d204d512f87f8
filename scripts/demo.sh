#!/usr/bin/env bash
# The demo: from a fresh clone, install, generate the demo scene, train nerfacto, segment the red
# ball from a stored prompt (weight-free segmenter; SAM when its weights are in the cache; and the
# oracle for reference), evaluate on held-out views and write pictures. Offline-capable.
# ~10 minutes on a 2-core CPU; a larger setting on a CUDA machine.  Usage: scripts/demo.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo_out}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e . 
export PATH="$PWD/.venv/bin:$PATH" PYTHONWARNINGS=ignore
# ns-render's videos need ffmpeg (Debian's package); installed here when we may
if ! command -v ffmpeg >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q ffmpeg >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q ffmpeg >/dev/null; } || true
fi

if python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda; SIZE=128; VIEWS=64; STEPS=3000; RAYS=4096; IMPL=tcnn; SAMPLES=(48 256 96); HASH=19
else  # the CPU setting: fewer samples per ray (nerfacto: 48 + 256/96), smaller hash tables (nerfacto: 2^19): ~0.45 s per step
  DEVICE=cpu; SIZE=64; VIEWS=40; STEPS=600; RAYS=1024; IMPL=torch; SAMPLES=(24 48 24); HASH=15
fi
PROMPT=configs/demo_prompt_${SIZE}.json
echo "== sa3d demo on $DEVICE: ${VIEWS} views of ${SIZE}x${SIZE}, nerfacto ${STEPS} steps -> $OUT"

[ -f "$OUT/scene/transforms.json" ] || sa3d-make-scene --output "$OUT/scene" --num-views "$VIEWS" --width "$SIZE" --height "$SIZE"

NERFACTO=$(ls -d "$OUT"/outputs/scene/nerfacto/*/ 2>/dev/null | tail -n 1 || true)
if [ -z "$NERFACTO" ] || ! ls "$NERFACTO"nerfstudio_models/*.ckpt >/dev/null 2>&1; then
  sa3d-train-nerfacto nerfacto --data "$OUT/scene" --output-dir "$OUT/outputs" --machine.device-type "$DEVICE" \
    --vis tensorboard --viewer.quit-on-train-completion True --max-num-iterations "$STEPS" \
    --pipeline.model.implementation "$IMPL" \
    --pipeline.model.log2-hashmap-size "$HASH"     --pipeline.model.num-nerf-samples-per-ray "${SAMPLES[0]}" --pipeline.model.num-proposal-samples-per-ray "${SAMPLES[1]}" "${SAMPLES[2]}" \
    --pipeline.datamanager.train-num-rays-per-batch "$RAYS" --steps-per-save 100000
  NERFACTO=$(ls -d "$OUT"/outputs/scene/nerfacto/*/ | tail -n 1)
fi

SEGMENTERS="weightfree oracle"
if ls "${SA3D_CACHE:-$HOME/.cache/sa3d_ns}"/sam_vit_*.pth >/dev/null 2>&1; then SEGMENTERS="sam $SEGMENTERS"; fi
SUMMARY="$OUT/results.txt"; : > "$SUMMARY"
for SEG in $SEGMENTERS; do
  EXTRA=()
  if [ "$SEG" = sam ]; then
    VARIANT=$(basename "$(ls "${SA3D_CACHE:-$HOME/.cache/sa3d_ns}"/sam_vit_*.pth | head -n 1)" | cut -d_ -f2-3)
    EXTRA=(--pipeline.sam-variant "$VARIANT")
  fi
  rm -rf "$OUT/outputs/scene/sa3d/demo_$SEG"
  ns-train sa3d --pipeline.nerfacto-config "${NERFACTO}config.yml" --pipeline.prompt "$PROMPT" \
    --pipeline.segmenter "$SEG" "${EXTRA[@]}" --machine.device-type "$DEVICE" --vis tensorboard \
    --output-dir "$OUT/outputs" --timestamp "demo_$SEG"
  RUN="$OUT/outputs/scene/sa3d/demo_$SEG"
  sa3d-eval --load-config "$RUN/config.yml" --split test | tee -a "$SUMMARY"
  python -m sa3d_ns.tools.contact_sheet "$RUN" "$OUT/views_$SEG.png" >/dev/null
  ns-render dataset --load-config "$RUN/config.yml" --output-path "$RUN/renders" --split test \
    --rendered-output-names rgb_overlay mask rgb_object rgb_removed --image-format png --colormap-options.colormap gray >/dev/null
  if [ "$SEG" = weightfree ]; then
    sa3d-export pointcloud --load-config "$RUN/config.yml" --num-points 20000 >/dev/null
    sa3d-export mesh --load-config "$RUN/config.yml" --resolution 96 >/dev/null
    if command -v ffmpeg >/dev/null 2>&1; then  # a video: the object alone | the scene without it | the overlay
      ns-render spiral --load-config "$RUN/config.yml" --output-path "$OUT/video_$SEG.mp4" --seconds 3 --frame-rate 12 \
        --rendered-output-names rgb_object rgb_removed rgb_overlay >/dev/null
    else
      echo "(no ffmpeg: 'sudo apt-get install ffmpeg' for the demo's video)"
    fi
  fi
  rm -rf "$OUT/figures_$SEG"
  python -m sa3d_ns.tools.figures "$RUN" "$OUT/figures_$SEG" >/dev/null
done

# two more objects added to the weight-free run (the ball is kept, not segmented again)
rm -rf "$OUT/outputs/scene/sa3d/demo_objects"
ns-train sa3d --pipeline.nerfacto-config "${NERFACTO}config.yml" --pipeline.prompt "configs/demo_more_objects_${SIZE}.json" \
  --pipeline.add-to "$OUT/outputs/scene/sa3d/demo_weightfree/config.yml" --pipeline.segmenter weightfree \
  --machine.device-type "$DEVICE" --vis tensorboard --output-dir "$OUT/outputs" --timestamp demo_objects
RUN="$OUT/outputs/scene/sa3d/demo_objects"
sa3d-eval --load-config "$RUN/config.yml" --split test | tee -a "$SUMMARY"
ns-render dataset --load-config "$RUN/config.yml" --output-path "$RUN/renders" --split test \
  --rendered-output-names rgb_overlay rgb_removed_crate rgb_object_can --image-format png >/dev/null
rm -rf "$OUT/figures_objects"
python -m sa3d_ns.tools.figures "$RUN" "$OUT/figures_objects" >/dev/null

echo
echo "== Done. Look at:"
echo "   $OUT/views_*.png          every view's 2D mask and prompt points (blue frame: prompt view, green: accepted, red: rejected)"
echo "   $OUT/figures_*/           held-out renders (overlay | object alone | object removed | mask), the point cloud and mesh from 3 sides"
echo "   $OUT/figures_objects/     three objects in one run: instance overlay | the crate removed | the can alone"
echo "   $OUT/video_weightfree.mp4     ns-render spiral: the ball alone | the scene without it | the overlay"
echo "   $OUT/outputs/scene/sa3d/demo_weightfree/sa3d/export/object_points.ply   the object as a coloured point cloud"
echo "   $OUT/outputs/scene/sa3d/demo_*/renders/test/   held-out views: mask, overlay, the object alone (rgb_object) and the scene without it (rgb_removed)"
echo "   $OUT/outputs/scene/sa3d/demo_*/sa3d/summary.json  accepted / rejected views with their IoU"
echo "   $SUMMARY                  held-out IoU per view (also in each run's sa3d/eval_test/eval.json)"
echo "   ns-viewer --load-config $OUT/outputs/scene/sa3d/demo_weightfree/config.yml   to look around"
