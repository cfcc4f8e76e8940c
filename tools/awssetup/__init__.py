"""The AWS side of a fleetprov fleet in one command: ``python -m tools.awssetup setup`` (see __main__)."""
