"""Input preparation shared by training and serving, with numpy and the standard library only."""
