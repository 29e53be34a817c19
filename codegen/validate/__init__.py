"""``gradsmith validate``: every kernel of a tree, compiled or imported, checked against the
mpmath reference and finite differences over a fixed grid of shapes, dtypes and options."""
