"""The command table (generated from Redis's own metadata), its lookups, the ACL line
derived from it, and the commands the proxy answers itself. Pure."""
