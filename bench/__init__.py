"""sbx's benchmarks: `make bench` (quick, checks nothing about speed), `make bench-full`."""
