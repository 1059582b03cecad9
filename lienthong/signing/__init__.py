"""Keys, certificates, record signatures and their verification."""
