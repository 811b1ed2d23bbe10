"""A small Flower app whose ServerApp records its run with driftscope."""
