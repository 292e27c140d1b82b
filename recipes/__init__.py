"""Built-in recipes, shipped as package data (installed as difflab.recipes)."""
