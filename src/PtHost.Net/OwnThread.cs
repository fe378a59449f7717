namespace PtHost.Net;

/// <summary>A blocking loop on a background thread of its own (a listener's poll(2) loop), seen as a task that ends with it.</summary>
public static class OwnThread
{
    /// <summary>Starts <paramref name="loop"/> on a new background thread; the task completes when it returns and faults when it throws.</summary>
    public static Task Start(string name, Action loop)
    {
        var ended = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        new Thread(() =>
        {
            try
            {
                loop();
                ended.TrySetResult();
            }
            catch (Exception e)
            {
                ended.TrySetException(e);
            }
        })
        { IsBackground = true, Name = name }.Start();
        return ended.Task;
    }
}
