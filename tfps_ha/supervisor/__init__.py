"""The local supervisor: owns every task process and restarts what dies."""
