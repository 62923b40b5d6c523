"""Every picture segcli draws: colours and overlays, grids of images and masks, and charts."""
