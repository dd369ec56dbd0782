defmodule Beamlens.Redactor do
  @options [
    patterns: [
      type: {:list, {:or, [{:struct, Regex}, {:tuple, [{:struct, Regex}, :binary]}]}},
      default: [],
      expected: "a list of regexes or {regex, replacement} pairs",
      doc:
        "Extra regexes, replaced by `\"[REDACTED]\"`, or `{regex, replacement}` pairs " <>
          "(the replacement may use `\\\\1`...). They run after the defaults."
    ],
    keys: [
      type: {:list, {:or, [:string, :atom]}},
      default: [],
      expected: "a list of strings or atoms",
      doc:
        "Extra key names (strings or atoms) whose values are secret, in data (any letter " <>
          "case) and in `key=value` text (written in lower, upper or title case: `iban`, " <>
          "`IBAN`, `Iban`)."
    ],
    function: [
      type: {:fun, 1},
      default: nil,
      doc:
        "A function `String.t() -> String.t()` applied last to every string. If it raises, " <>
          "the string is replaced by `\"[REDACTION FAILED]\"`: redaction fails closed."
    ],
    defaults: [
      type: :boolean,
      default: true,
      doc: "`false` turns the default rules off (not recommended)."
    ]
  ]

  @moduledoc """
  Scrubs secrets and personal data from everything BeamLens may show a
  model: snapshots, Lua results and printed output, log messages, exception
  messages and stack traces, SQL.

  There is one redactor per VM. It is applied centrally, to every snapshot,
  tool result and Lua result a watcher sends, and again at the stores that
  keep raw text (log messages when they are read, exception messages and
  stack trace arguments, SQL when it is stored), so a custom domain gets it
  for free.

  ## What the defaults remove

    * bearer tokens, `Authorization` header values (`Bearer`, `Basic`, ...)
      and `Basic` credentials anywhere (base64 of `user:password`);
    * API keys by their shape: `sk-...` (OpenAI, Anthropic `sk-ant-` and
      compatible), Stripe `sk_live_...`, AWS access key ids (`AKIA...`) and
      secret keys (40 mixed-case base64 characters, even without their key
      name), GitHub (`ghp_...`, `github_pat_...`), GitLab (`glpat-...`),
      Slack (`xoxb-...`), Google (`AIza...`), SendGrid, Hugging Face, npm,
      PyPI, Groq, Replicate, Shopify, DigitalOcean, JSON Web Tokens, PEM
      private keys;
    * passwords in URLs (`postgres://user:[REDACTED]@host/db`, also when
      the password holds `@` or `/`), in `user:password@host` outside URLs
      and in `curl -u user:password`;
    * cloud connection strings (`AccountKey=...`, `SharedAccessKey=...`,
      `sig=...`);
    * values of secret-looking keys in text (`password=...`, `apiKey: ...`,
      `DB_PassWord=...`, `"client_secret":"..."`, escaped JSON
      `\\"token\\":\\"...\\"`, `secrets: [...]`, cookies) and in data (the
      value of a map key or keyword such as `:password`, `"access_token"`,
      `"Authorization"`, `sessionId`, `:req_cookies`; every element of a
      list or tuple under such a key; counts under plural keys such as
      `tokens: 5` are kept);
    * email addresses (`[EMAIL]`; the names of this node and of connected
      nodes, which look like addresses, are kept);
    * card numbers: 13 to 19 digits, spaces, dots or dashes allowed, with a
      card network prefix and a valid Luhn checksum (`[CARD]`).

  The built-in rules run in native code as finite automata: time is linear
  in the text, whatever the text.

  ## Configuration

  Pass `:redact` to BeamLens, or set `config :beamlens, :redact, [...]`:

      {Beamlens,
       watchers: [:beam, :exception],
       redact: [
         patterns: [~r/\\bACME-\\d{6}\\b/, {~r/tenant=\\w+/, "tenant=?"}],
         keys: ["iban", :national_id],
         function: &MyApp.Scrub.text/1
       ]}

  #{Beamlens.Schema.docs(@options)}

  Atoms in data are checked too; one that holds a secret comes out as a
  redacted string (no atom is ever created). Charlists are left as they
  are: convert text to strings before exposing it.

      iex> Beamlens.Redactor.redact("GET /admin Authorization: Bearer abc.def.ghi-0123456789")
      "GET /admin Authorization: Bearer [REDACTED]"

      iex> Beamlens.Redactor.redact(%{user: "alice@example.com", password: "hunter2"})
      %{user: "[EMAIL]", password: "[REDACTED]"}
  """

  require Logger

  alias Beamlens.Native

  defstruct defaults: true,
            native: nil,
            custom: [],
            keys: nil,
            key_anchors: nil,
            function: nil,
            extra: %{}

  @type t :: %__MODULE__{}

  @typedoc "An option of `:redact` (see the module docs)."
  @type option ::
          {:patterns, [Regex.t() | {Regex.t(), String.t()}]}
          | {:keys, [String.t() | atom()]}
          | {:function, (String.t() -> String.t())}
          | {:defaults, boolean()}

  @key {__MODULE__, :current}
  @mask "[REDACTED]"
  @failed "[REDACTION FAILED]"
  @max_depth 40
  # Text up to this size is redacted on the calling scheduler (tens of
  # microseconds); longer text on a dirty CPU scheduler.
  @inline_bytes 16_384

  # Key names whose values are secret: a key ending in one of these, in any
  # letter case, with `_`, `-` or nothing between the parts (`api_key`,
  # `X-Api-Key`, `apiKey`), optionally plural (`secrets`, `tokens`).
  @secret_words ~w(password passwd passphrase pwd secret token api_key api-key apikey
                   access_key access-key private_key private-key account_key
                   shared_access_key client_secret session_id sessionid cookie credential
                   credentials signature secret_key_base userinfo authorization auth)

  @doc """
  Builds a redactor from options (see the module docs).

      iex> {:ok, redactor} = Beamlens.Redactor.new(patterns: [~r/ACME-\\d+/])
      iex> Beamlens.Redactor.redact("order ACME-42 for bob@example.org", redactor)
      "order [REDACTED] for [EMAIL]"

      iex> {:error, error} = Beamlens.Redactor.new(pattern: [])
      iex> error.message
      "unknown :redact option :pattern (did you mean :patterns?); known: :patterns, :keys, :function, :defaults"
  """
  @spec new([option()]) :: {:ok, t()} | {:error, ArgumentError.t()}
  def new(opts \\ []) do
    {:ok, build!(opts)}
  rescue
    e in ArgumentError -> {:error, e}
  end

  @doc """
  Makes `opts` the redactor of this VM. Raises `ArgumentError` on invalid
  options. BeamLens calls it at start when given `:redact`.
  """
  @spec configure!([option()]) :: :ok
  def configure!(opts) do
    # The same options are not written again: persistent_term updates are
    # global, so restarts with the same options must not cost anything.
    case :persistent_term.get(@key, nil) do
      {^opts, _redactor} -> :ok
      _ -> :persistent_term.put(@key, {opts, build!(opts)})
    end

    :ok
  end

  @doc """
  The redactor in use: the one set by `configure!/1`, else one built from
  `config :beamlens, :redact` (or the defaults).
  """
  @spec current() :: t()
  def current do
    case :persistent_term.get(@key, nil) do
      nil ->
        opts = Application.get_env(:beamlens, :redact, [])

        redactor =
          case new(opts) do
            {:ok, redactor} ->
              redactor

            {:error, error} ->
              Logger.error(
                "BeamLens: invalid config :beamlens, :redact (#{error.message}); using the defaults"
              )

              build!([])
          end

        :persistent_term.put(@key, {opts, redactor})
        redactor

      {_opts, redactor} ->
        redactor
    end
  end

  @doc """
  Redacts a term with the current redactor (or the given one): strings are
  scrubbed, maps, lists and tuples are walked, values of secret keys are
  masked. Other terms are returned unchanged.

  Time is linear in the size of the text whatever the text is (the built-in
  rules are finite automata in native code; text over 16 KiB is handled on a
  dirty scheduler). Custom `:patterns` are Erlang regexes and cost what they
  cost.
  """
  @spec redact(term(), t() | nil) :: term()
  def redact(term, redactor \\ nil) do
    redactor = redactor || current()
    walk(term, %{redactor: redactor, nodes: node_names()}, 0)
  end

  @doc """
  Redacts one string (see `redact/2`); any other term is rendered with
  `inspect/2` first.
  """
  @spec redact_text(term(), t() | nil) :: String.t()
  def redact_text(text, redactor \\ nil)
  def redact_text(text, redactor) when is_binary(text), do: redact(text, redactor)

  def redact_text(other, redactor),
    do: redact(inspect(other, limit: 20, printable_limit: 1_000), redactor)

  @doc """
  Cuts `text` to at most `limit` characters for storage, so that redaction
  when it is read still sees whole secrets: a cut text also loses its last,
  partial word (when that word is shorter than 256 bytes: longer runs are
  data, not a secret, and are cut as they are). Text within the limit is
  returned as it is.

      iex> Beamlens.Redactor.truncate("token sk-ant-api03-abcdef", 20)
      "token"
  """
  @spec truncate(String.t(), non_neg_integer()) :: String.t()
  def truncate(text, limit) when byte_size(text) <= limit, do: text

  def truncate(text, limit) do
    if String.length(text) <= limit do
      text
    else
      text = String.slice(text, 0, limit)
      size = byte_size(text)

      # A copy: a part would keep the whole original alive in the store.
      case last_blank(text, size - 1, max(size - 256, 0)) do
        nil -> :binary.copy(text)
        blank -> :binary.copy(binary_part(text, 0, blank))
      end
    end
  end

  defp last_blank(_text, i, stop) when i < stop, do: nil

  defp last_blank(text, i, stop) do
    if :binary.at(text, i) in ~c" \t\r\n", do: i, else: last_blank(text, i - 1, stop)
  end

  ## Walking terms

  defp walk(_term, _ctx, depth) when depth > @max_depth, do: "[nested too deep]"
  defp walk(text, ctx, _depth) when is_binary(text), do: text(text, ctx)

  defp walk(atom, ctx, _depth) when is_atom(atom) and atom not in [nil, true, false] do
    name = Atom.to_string(atom)

    case text(name, ctx) do
      ^name -> atom
      redacted -> redacted
    end
  end

  defp walk(%{__struct__: _} = struct, ctx, depth) do
    struct
    |> Map.from_struct()
    |> walk_map(ctx, depth)
    |> Map.put(:__struct__, struct.__struct__)
  end

  defp walk(map, ctx, depth) when is_map(map), do: walk_map(map, ctx, depth)
  defp walk(list, ctx, depth) when is_list(list), do: walk_list(list, ctx, depth)

  defp walk({key, value}, ctx, depth) do
    case secret_key(key, ctx) do
      nil -> {walk(key, ctx, depth + 1), walk(value, ctx, depth + 1)}
      kind -> {key, mask(value, kind, ctx, depth)}
    end
  end

  defp walk(tuple, ctx, depth) when is_tuple(tuple) do
    tuple |> Tuple.to_list() |> walk_list(ctx, depth) |> List.to_tuple()
  end

  defp walk(other, _ctx, _depth), do: other

  defp walk_map(map, ctx, depth) do
    Map.new(map, fn {key, value} ->
      case secret_key(key, ctx) do
        nil -> {walk(key, ctx, depth + 1), walk(value, ctx, depth + 1)}
        kind -> {key, mask(value, kind, ctx, depth)}
      end
    end)
  end

  # Handles improper lists too.
  defp walk_list([], _ctx, _depth), do: []

  defp walk_list([head | tail], ctx, depth),
    do: [walk(head, ctx, depth + 1) | walk_list(tail, ctx, depth)]

  defp walk_list(tail, ctx, depth), do: walk(tail, ctx, depth + 1)

  # The value of a secret key (`kind` says which: `:singular`, `:plural` or
  # `:cookie`). Scalars are masked, except counts under a plural key
  # (`tokens: 5`); every element of a list or tuple is masked (`tokens:
  # ["a", "b"]`); maps are walked, so a `credentials` map still shows its
  # non-secret fields, except under a cookie key (`req_cookies`), where
  # every value is a cookie.
  defp mask(_value, _kind, _ctx, depth) when depth > @max_depth, do: "[nested too deep]"
  defp mask(value, :plural, _ctx, _depth) when is_number(value), do: value
  defp mask(value, _kind, _ctx, _depth) when is_binary(value) or is_number(value), do: @mask
  defp mask(value, _kind, _ctx, _depth) when value in [nil, true, false], do: value
  defp mask(value, _kind, _ctx, _depth) when is_atom(value), do: @mask

  defp mask(value, kind, ctx, depth) when is_list(value) do
    if value != [] and List.ascii_printable?(value, 200),
      do: @mask,
      else: mask_list(value, kind, ctx, depth + 1)
  end

  defp mask(%{__struct__: _} = value, kind, ctx, depth) do
    value |> Map.from_struct() |> mask(kind, ctx, depth) |> Map.put(:__struct__, value.__struct__)
  end

  defp mask(value, :cookie, ctx, depth) when is_map(value),
    do: Map.new(value, fn {key, v} -> {key, mask(v, :cookie, ctx, depth + 1)} end)

  defp mask(value, _kind, ctx, depth) when is_map(value), do: walk(value, ctx, depth + 1)

  defp mask(value, kind, ctx, depth) when is_tuple(value),
    do: value |> Tuple.to_list() |> mask_list(kind, ctx, depth + 1) |> List.to_tuple()

  defp mask(value, _kind, ctx, depth), do: walk(value, ctx, depth + 1)

  defp mask_list([], _kind, _ctx, _depth), do: []

  defp mask_list([head | tail], kind, ctx, depth),
    do: [mask(head, kind, ctx, depth) | mask_list(tail, kind, ctx, depth)]

  defp mask_list(tail, kind, ctx, depth), do: mask(tail, kind, ctx, depth)

  defp secret_key(key, ctx) when is_atom(key) and key not in [nil, true, false],
    do: secret_key(Atom.to_string(key), ctx)

  # A cheap scan for the key words first (keys are short: lower-casing
  # them costs little); the regex only when one is there.
  defp secret_key(key, %{redactor: %{keys: %Regex{} = keys, key_anchors: anchors}})
       when is_binary(key) and byte_size(key) <= 64 do
    if :binary.match(String.downcase(key, :ascii), anchors) != :nomatch do
      case Regex.run(keys, key, capture: :all_but_first) do
        nil -> nil
        [word, plural] -> key_kind(String.downcase(word, :ascii), plural)
      end
    end
  end

  defp secret_key(_key, _ctx), do: nil

  defp key_kind("cookie", _plural), do: :cookie
  defp key_kind(_word, ""), do: :singular
  defp key_kind(_word, _plural), do: :plural

  ## Text

  defp text(text, %{redactor: redactor} = ctx) do
    text
    |> native(redactor.native, ctx)
    |> apply_custom(redactor.custom)
    |> apply_function(redactor.function)
  end

  # Every built-in rule needs at least 5 bytes.
  defp native(text, _native, _ctx) when byte_size(text) < 5, do: text
  defp native(text, nil, _ctx), do: text
  defp native(_text, :unavailable, _ctx), do: @failed

  defp native(text, native, ctx) do
    result =
      if byte_size(text) <= @inline_bytes,
        do: Native.redact_text(native, text, ctx.nodes),
        else: Native.redact_text_dirty(native, text, ctx.nodes)

    if is_binary(result), do: result, else: @failed
  end

  defp apply_custom(text, rules) do
    Enum.reduce(rules, text, fn {regex, replacement}, acc ->
      Regex.replace(regex, acc, replacement)
    end)
  end

  defp apply_function(text, nil), do: text

  defp apply_function(text, fun) do
    case fun.(text) do
      result when is_binary(result) -> result
      _ -> @failed
    end
  rescue
    _ -> @failed
  catch
    _, _ -> @failed
  end

  defp node_names do
    Enum.map([node() | Node.list()], &Atom.to_string/1)
  end

  @doc false
  # 13 to 19 digits (separators dropped), a card network's first digit and
  # a valid Luhn checksum. The native rules use the same test.
  @spec card?(binary()) :: boolean()
  def card?(text) do
    digits = for <<c <- text>>, c in ?0..?9, do: c - ?0

    length(digits) in 13..19 and (hd(digits) + ?0) in ~c"23456" and luhn?(digits)
  end

  defp luhn?(digits) do
    {sum, _} =
      digits
      |> Enum.reverse()
      |> Enum.reduce({0, false}, fn digit, {sum, double?} ->
        value = if double?, do: digit * 2, else: digit
        value = if value > 9, do: value - 9, else: value
        {sum + value, not double?}
      end)

    rem(sum, 10) == 0
  end

  ## Building

  defp build!(opts) do
    opts =
      Beamlens.Schema.validate!(opts, @options,
        label: ":redact option",
        of: ":redact",
        unknown: "unknown %{label} %{key}%{hint}; known: %{known}"
      )

    [patterns: patterns, keys: keys, function: function, defaults: defaults] = opts

    words = Enum.map(keys, &(&1 |> to_string() |> String.downcase()))
    words = if defaults, do: @secret_words ++ words, else: words

    custom =
      Enum.map(patterns, fn
        %Regex{} = regex -> {regex, @mask}
        {regex, replacement} -> {regex, replacement}
      end)

    %__MODULE__{
      defaults: defaults,
      native: native_rules(words, defaults),
      custom: custom,
      keys: key_regex(words),
      key_anchors: if(words != [], do: :binary.compile_pattern(lowercase_anchors(words))),
      function: function,
      extra: %{patterns: length(patterns), keys: length(keys)}
    }
  end

  # The built-in text rules, compiled once in native code. Without the
  # native library nothing can be checked, so text fails closed.
  defp native_rules([], false), do: nil

  defp native_rules(words, defaults) do
    case Native.redactor_new(words, defaults) do
      {:ok, native} ->
        native

      {:error, {_kind, message, _details}} ->
        raise ArgumentError, "invalid :redact option :keys: #{message}"
    end
  rescue
    e in ErlangError ->
      if e.original == :nif_not_loaded, do: :unavailable, else: reraise(e, __STACKTRACE__)
  end

  defp lowercase_anchors(words) do
    words
    |> Enum.flat_map(
      &[
        &1,
        String.replace(&1, "_", "-"),
        String.replace(&1, "-", "_"),
        String.replace(&1, ~r/[_-]/, "")
      ]
    )
    |> Enum.uniq()
  end

  defp key_regex([]), do: nil

  # A key ending in a word, after a non-letter, at the start, or at a
  # camelCase step (`dbPassword`); captures the word and a plural `s`.
  defp key_regex(words) do
    Regex.compile!("(?:^|[^a-zA-Z]|(?<=[a-z])(?=[A-Z]))(?i:(" <> alternation(words) <> ")(s?))$")
  end

  defp alternation(words) do
    words
    |> Enum.uniq()
    |> Enum.sort_by(&(-byte_size(&1)))
    |> Enum.map_join("|", fn word ->
      word |> Regex.escape() |> String.replace(~r/(?:\\-|_)/, "[_-]?")
    end)
  end

  defimpl Inspect do
    def inspect(redactor, _opts) do
      "#Beamlens.Redactor<defaults: #{redactor.defaults}, patterns: #{redactor.extra.patterns}, " <>
        "keys: #{redactor.extra.keys}, function: #{redactor.function != nil}>"
    end
  end
end
