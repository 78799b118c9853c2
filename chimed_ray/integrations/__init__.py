"""Other engines a stage can hand its work to (OpenRLHF for PPO), behind our configs."""
