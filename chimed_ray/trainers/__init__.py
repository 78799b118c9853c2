"""One file per training stage; shared DeepSpeed engine, loop and Ray Train launcher."""
