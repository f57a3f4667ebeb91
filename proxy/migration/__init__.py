"""The migration's pure rules: phases and legal steps, moved shares, reserved keys,
the signed cut-read gate."""
