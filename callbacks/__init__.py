"""Lightning callbacks (installed as ``canvas_engineering.callbacks``)."""
