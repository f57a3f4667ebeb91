"""YAML -> frozen, validated dataclasses. Pure: one reader of the file (reader.py, which also
holds the generic typed reads), the model (model.py) and the rules that check a file into it
(schema.py, which every other package imports from)."""
