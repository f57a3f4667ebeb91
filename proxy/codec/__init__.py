"""RESP, pure: client requests and backend replies, bytes in, frames out."""
