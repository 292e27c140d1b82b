"""The Textual screens of the lab (installed as difflab.screens)."""
