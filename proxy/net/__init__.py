"""asyncio I/O: the client connection, backend connections and their reply slots, pools,
fan-out, double-write and the per-key fence, streamed values, per-client memory."""
