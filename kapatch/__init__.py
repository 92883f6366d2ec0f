"""kapatch: one TCP keepalive policy for every outbound connection of a process."""

__all__: list[str] = []
