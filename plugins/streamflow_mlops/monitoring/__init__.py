"""Watching the model: Evidently drift and the prediction log."""
