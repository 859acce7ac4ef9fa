"""nerfstudio dataparsers of pmni. Import the concrete modules directly; this package stays import-light."""
