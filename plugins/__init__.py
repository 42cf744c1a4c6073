"""Built-in plugins (installed as ``canvas_engineering.plugins``).

Registered through the ``canvas_engineering`` entry-point group, the same path a
third-party distribution uses.
"""
