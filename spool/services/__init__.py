"""The resident processes beside the workers: the scheduler (`scheduler`, its entries in
`schedule`), the completion-event notifier (`notify`, its destinations in `sinks`) and the MQTT
intake (`mqtt_intake`). Each is a `runner.Resident`: it stops, reloads and follows its config
file the same way.
"""
