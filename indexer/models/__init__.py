"""Model configs that are data (open_clip JSON), and the registry that resolves project aliases."""
