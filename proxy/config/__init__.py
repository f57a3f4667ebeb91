"""YAML -> frozen, validated dataclasses. Pure: one reader of the file."""
