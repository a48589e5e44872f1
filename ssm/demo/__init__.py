"""Built-in example data: a parametric head generator that needs no external files."""
