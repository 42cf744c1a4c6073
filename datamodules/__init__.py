"""LightningDataModules (installed as ``canvas_engineering.datamodules``)."""
