"""The procedural captioned world: the project's built-in data for training and evaluating small
CLIP models. See `World` for samples, `tasks` for zero-shot evaluation and `oracle` for checking
images against prompts."""
