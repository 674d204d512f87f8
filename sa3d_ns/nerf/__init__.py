"""nerfstudio glue: the sa3d model, pipeline and trainer."""
