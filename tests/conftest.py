import os

os.environ.setdefault("SA3D_OFFLINE", "1")  # tests never download anything
