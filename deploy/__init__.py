"""Infrastructure: the local emulator launcher and resource creation."""
