"""The high-rate recorder: every tick's key signals on disk, captures and their exports."""
