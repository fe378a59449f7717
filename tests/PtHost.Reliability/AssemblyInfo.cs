// Process tests measure fds and memory of the pthost processes they start, and the load test needs
// the machine to itself: the suite's tests run one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
