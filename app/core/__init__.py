"""What a publish is, independent of how it arrives: errors, messages, the gateway of connection ids."""
