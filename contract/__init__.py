"""The tablet contract (docs/tablet-contract.md), pure: topics, command parsing and replies,
state and event payloads, sensor payloads, read-only queries and their answers. No asyncio and
no I/O, so every rule of the contract is tested without a broker; the MQTT link in controller/
does the I/O."""
