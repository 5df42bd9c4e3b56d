# Placeholder; replaced by the install rules.
