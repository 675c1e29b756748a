"""The dashboard's files (pages, scripts, styles), served at /ui by `mlxrouter.api.ui`."""
