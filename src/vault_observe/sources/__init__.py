"""Where audit lines come from: sockets (unix, tcp, udp) or a recorded file."""
