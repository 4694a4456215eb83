"""Experiments: recipes and the recursive-generation loop (the only package that knows the loop)."""
