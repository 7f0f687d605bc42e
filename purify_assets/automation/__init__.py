"""Partitions, sensors, schedules and jobs."""
