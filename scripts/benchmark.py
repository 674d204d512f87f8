#!/usr/bin/env python
"""The sa3d benchmark (reference path vs default path); see sa3d_ns/bench.py or --help."""

import sys

from sa3d_ns.bench import main

if __name__ == "__main__":
    sys.exit(main())
