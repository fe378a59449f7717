using System.Collections;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace PtHost.Logging;

/// <summary>
/// Wraps a log sink so that every line reaches it with its addresses scrubbed (spec/ipc.md §4.11):
/// the formatted message, the exception text and the structured arguments. One layer for every
/// logger of the process (host, transports, plugins, relays, Kestrel), so log calls need no care.
/// </summary>
/// <param name="inner">The sink.</param>
/// <param name="ownsInner">Dispose <paramref name="inner"/> with this provider (the container does not own it).</param>
public sealed class ScrubbingLoggerProvider(ILoggerProvider inner, bool ownsInner = false) : ILoggerProvider, ISupportExternalScope
{
    public ILogger CreateLogger(string categoryName) => new ScrubbingLogger(inner.CreateLogger(categoryName));

    public void SetScopeProvider(IExternalScopeProvider scopeProvider)
    {
        if (inner is ISupportExternalScope scoped) scoped.SetScopeProvider(scopeProvider);
    }

    public void Dispose()
    {
        if (ownsInner) inner.Dispose();
    }

    private sealed class ScrubbingLogger(ILogger inner) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => inner.BeginScope(state);

        public bool IsEnabled(LogLevel logLevel) => inner.IsEnabled(logLevel);

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!inner.IsEnabled(logLevel)) return;
            var arguments = state as IReadOnlyList<KeyValuePair<string, object?>>;
            List<string>? tokens = null;
            if (arguments is not null)
                foreach (var (_, value) in arguments)
                    if (AddressScrubber.IsAddress(value) || value is IEnumerable<object>)
                        AddressScrubber.AddTokens(value, tokens ??= []);
            string message = AddressScrubber.Scrub(formatter(state, exception), tokens);
            var scrubbed = exception is null ? null : new ScrubbedException(exception, tokens);
            inner.Log(logLevel, eventId, new ScrubbedState(message, arguments, tokens), scrubbed, static (s, _) => s.Message);
        }
    }

    /// <summary>The line's state as sinks see it: the scrubbed message, and arguments with addresses scrubbed.</summary>
    private sealed class ScrubbedState(string message, IReadOnlyList<KeyValuePair<string, object?>>? arguments, List<string>? tokens)
        : IReadOnlyList<KeyValuePair<string, object?>>
    {
        public string Message { get; } = message;

        public int Count => arguments?.Count ?? 0;

        public KeyValuePair<string, object?> this[int index]
        {
            get
            {
                var (key, value) = arguments![index];
                if (key == "{OriginalFormat}") return new(key, value);
                return new(key, value switch
                {
                    null => null,
                    string s => AddressScrubber.Scrub(s, tokens),
                    _ when AddressScrubber.IsAddress(value) => AddressScrubber.Scrubbed,
                    IEnumerable<object> => AddressScrubber.Scrub(string.Join(", ", (IEnumerable<object>)value), tokens),
                    IFormattable or IConvertible => value,
                    _ => AddressScrubber.Scrub(value.ToString() ?? "", tokens),
                });
            }
        }

        public IEnumerator<KeyValuePair<string, object?>> GetEnumerator()
        {
            for (int i = 0; i < Count; i++) yield return this[i];
        }

        IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

        public override string ToString() => Message;
    }

    /// <summary>An exception as a sink prints it: its text (message, inner exceptions, stack) scrubbed.</summary>
    private sealed class ScrubbedException(Exception original, List<string>? tokens)
        : Exception(AddressScrubber.Scrub(original.Message, tokens))
    {
        private readonly string _text = AddressScrubber.Scrub(original.ToString(), tokens);

        public override string ToString() => _text;
    }
}

/// <summary>Safe logging for a logging builder.</summary>
public static class ScrubbingLoggingBuilderExtensions
{
    /// <summary>
    /// Wraps every log sink registered so far in a <see cref="ScrubbingLoggerProvider"/>. Call it after
    /// the sinks are added. Each sink is still built by the container as before (same constructor, options).
    /// </summary>
    public static ILoggingBuilder ScrubAddresses(this ILoggingBuilder logging)
    {
        var services = logging.Services;
        for (int i = 0; i < services.Count; i++)
        {
            var d = services[i];
            if (d.ServiceType != typeof(ILoggerProvider) || d.IsKeyedService) continue;
            if (d.ImplementationType is { } type)
            {
                services.Add(ServiceDescriptor.Singleton(type, type));
                services[i] = ServiceDescriptor.Singleton<ILoggerProvider>(sp => new ScrubbingLoggerProvider((ILoggerProvider)sp.GetRequiredService(type)));
            }
            else if (d.ImplementationInstance is ILoggerProvider instance)
                services[i] = ServiceDescriptor.Singleton<ILoggerProvider>(new ScrubbingLoggerProvider(instance));
            else if (d.ImplementationFactory is { } factory)
                services[i] = ServiceDescriptor.Singleton<ILoggerProvider>(sp => new ScrubbingLoggerProvider((ILoggerProvider)factory(sp), ownsInner: true));
        }
        return logging;
    }
}
