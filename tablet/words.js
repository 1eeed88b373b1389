// The plain words for the contract's codes: a copy of the tables in contract/event_text.py,
// written by `python -m treadguard.controller.page_words tablet/words.js`. Not edited by hand:
// tests/test_page_words.py fails when it differs from those tables.
"use strict";
const WORDS = {
  "causes": {
    "grip_lost": "both hands off the handrails",
    "fall": "a fall was detected",
    "sensor_stale": "a grip or fall sensor went silent",
    "remote_estop": "the E-STOP was pressed on a tablet",
    "drive_link": "the treadmill's drive stopped answering",
    "drive_fault": "the treadmill's drive reported a fault",
    "feedback_mismatch": "the belt did not follow the commanded speed",
    "journal": "the session journal cannot be written",
    "rival_daemon": "another controller is driving this treadmill"
  },
  "causeHints": {
    "grip_lost": "Put both hands back on the handrails, then press Reset.",
    "fall": "See to the user and clear the fall sensor, then press Reset.",
    "sensor_stale": "Check the grip and fall sensors and their cables, then press Reset.",
    "remote_estop": "Nothing to clear: press Reset when you are ready.",
    "drive_link": "Check the drive's cable and power, then press Reset.",
    "drive_fault": "Read the fault on the drive and clear it there, then press Reset.",
    "feedback_mismatch": "Check the belt and the drive's speed feedback, then press Reset.",
    "journal": "Free the board's storage (call the technician), then press Reset.",
    "rival_daemon": "Stop the other controller (call the technician), then press Reset."
  },
  "endReasons": {
    "cap": "the session cap was reached",
    "completed": "the program is complete",
    "operator_stop": "stopped from a tablet",
    "tablet_lost": "no tablet heartbeat (the page was hidden or lost its link)",
    "start_aborted": "the start was aborted",
    "estop": "emergency stop",
    "fault": "fault",
    "loop_overrun": "the controller ran late",
    "shutdown": "the controller was shut down"
  },
  "refusals": {
    "invalid_json": "the command could not be read",
    "invalid_command": "the command is not complete or not valid",
    "unknown_type": "the treadmill does not know this command",
    "payload_too_large": "the command is too long",
    "out_of_range": "the value is outside what is allowed",
    "not_allowed": "not possible in the treadmill's present state",
    "preconditions_unmet": "not possible yet: something must be done first",
    "latched": "a stop is latched: Reset first",
    "duplicate": "this command was already received",
    "rate_limited": "too many commands at once",
    "internal_error": "the treadmill failed to handle the command"
  },
  "sensors": {
    "grip_left": "the left grip sensor",
    "grip_right": "the right grip sensor",
    "fall": "the fall sensor"
  },
  "states": {
    "idle": "IDLE",
    "countdown": "COUNTDOWN",
    "running": "RUNNING",
    "stopping": "STOPPING",
    "estop": "E-STOP",
    "fault": "FAULT"
  },
  "events": {
    "session_started": "Session started",
    "countdown": "Countdown",
    "belt_started": "Belt started",
    "speed_step": "Target raised",
    "cap_warning": "Cap warning",
    "stopping": "Stopping",
    "session_ended": "Session ended",
    "interval_rest": "Rest",
    "estop": "EMERGENCY STOP",
    "fault": "FAULT",
    "reset": "Reset",
    "grip_warning": "Hand off the handrail",
    "sensor_stale": "Sensor silent",
    "command_refused": "Command refused",
    "journal_warning": "Journal warning",
    "belt_found_moving": "Belt found moving",
    "commissioning_expired": "Commissioning expired",
    "stop_checked": "Stop checked",
    "maintenance_warning": "Maintenance"
  }
};
