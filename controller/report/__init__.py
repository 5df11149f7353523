"""The compliance report: figures a utility asks of a large load (ramp per window, energy in the
oscillation band, frequency response, battery use), streamed from the recorder's rows, checked
against a profile's limits, as JSON and as a self-contained HTML page."""
