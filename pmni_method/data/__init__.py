"""Data side of pmni: the DiLiGenT-MV loader and the per-ray store that feeds training."""
