"""jaxheads: pick the classifier head for a frozen pretrained CNN in one run.

The backbone runs once and its features are cached; a grid of heads then trains at once in one jitted,
vmapped program sharded over every device JAX sees.
"""

__version__ = "0.1.0"
