"""Schedule: refresh the global (cycle) assets daily. Off by default: switch it on in the UI."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from purify_assets.automation.jobs import purification_cycle_job

daily_cycle_schedule = ScheduleDefinition(
    name="daily_cycle_schedule", job=purification_cycle_job, cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="03:00 every day: one purification cycle over every batch landed so far.",
)
