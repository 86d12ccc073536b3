"""Small shared helpers: device/dtype policy, file resolution, logging."""
