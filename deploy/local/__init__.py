"""Run the whole system on one machine: embedded servers, service processes, `make run`."""
