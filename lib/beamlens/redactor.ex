defmodule Beamlens.Redactor do
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

    * bearer tokens and `Authorization` header values (`Bearer`, `Basic`, ...);
    * API keys by their shape: `sk-...` (OpenAI, Anthropic and compatible),
      Stripe `sk_live_...`, AWS access key ids (`AKIA...`), GitHub
      (`ghp_...`, `github_pat_...`), GitLab (`glpat-...`), Slack (`xox...`),
      Google (`AIza...`), SendGrid, JSON Web Tokens, PEM private keys;
    * passwords in URLs (`postgres://user:[REDACTED]@host/db`);
    * values of secret-looking keys in text (`password=...`, `api_key: ...`,
      `"client_secret":"..."`, cookies) and in data (the value of a map key
      or keyword such as `:password`, `"access_token"`, `"Authorization"`);
    * email addresses (`[EMAIL]`; the names of this node and of connected
      nodes, which look like addresses, are kept);
    * card numbers: 13 to 19 digits, spaces or dashes allowed, with a card
      network prefix and a valid Luhn checksum (`[CARD]`).

  ## Configuration

  Pass `:redact` to BeamLens, or set `config :beamlens, :redact, [...]`:

      {Beamlens,
       watchers: [:beam, :exception],
       redact: [
         patterns: [~r/\\bACME-\\d{6}\\b/, {~r/tenant=\\w+/, "tenant=?"}],
         keys: ["iban", :national_id],
         function: &MyApp.Scrub.text/1
       ]}

    * `:patterns` - extra regexes, replaced by `"[REDACTED]"`, or
      `{regex, replacement}` pairs (the replacement may use `\\\\1`...).
      They run after the defaults.
    * `:keys` - extra key names (strings or atoms) whose values are secret,
      in data (any letter case) and in `key=value` text (written in lower,
      upper or title case: `iban`, `IBAN`, `Iban`).
    * `:function` - a function `String.t() -> String.t()` applied last to
      every string. If it raises, the string is replaced by
      `"[REDACTION FAILED]"`: redaction fails closed.
    * `:defaults` - `false` turns the default rules off (not recommended).

  Atoms in data are checked too; one that holds a secret comes out as a
  redacted string (no atom is ever created). Charlists are left as they
  are: convert text to strings before exposing it.

      iex> Beamlens.Redactor.redact("GET /admin Authorization: Bearer abc.def.ghi-0123456789")
      "GET /admin Authorization: Bearer [REDACTED]"

      iex> Beamlens.Redactor.redact(%{user: "alice@example.com", password: "hunter2"})
      %{user: "[EMAIL]", password: "[REDACTED]"}
  """

  require Logger

  defstruct defaults: true,
            rules: [],
            anchors: nil,
            card: nil,
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
  @max_depth 40
  @option_keys [:patterns, :keys, :function, :defaults]

  # Key names whose values are secret: a key ending in one of these.
  @secret_words ~w(password passwd passphrase pwd secret token api_key api-key apikey
                   access_key access-key private_key private-key client_secret
                   session_id sessionid cookie credential credentials signature
                   secret_key_base userinfo authorization auth)

  @card_prefixes ~c"23456"

  # Literal text that every built-in rule needs, besides the secret key words
  # (which the key=value, Authorization and cookie rules need) and the card
  # rule (digits).
  @anchors ~w(@ eyJ -----BEGIN sk- sk_ pk_ rk_ AKIA ASIA AGPA AIDA AROA AIPA ANPA ANVA ABIA ACCA
              ghp_ gho_ ghu_ ghs_ ghr_ github_pat_ glpat- xox AIza SG. earer EARER)

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
  """
  @spec redact(term(), t() | nil) :: term()
  def redact(term, redactor \\ nil) do
    redactor = redactor || current()
    walk(term, %{redactor: redactor, nodes: nil}, 0)
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
    if secret_key?(key, ctx),
      do: {key, mask(value, ctx, depth)},
      else: {walk(key, ctx, depth + 1), walk(value, ctx, depth + 1)}
  end

  defp walk(tuple, ctx, depth) when is_tuple(tuple) do
    tuple |> Tuple.to_list() |> walk_list(ctx, depth) |> List.to_tuple()
  end

  defp walk(other, _ctx, _depth), do: other

  defp walk_map(map, ctx, depth) do
    Map.new(map, fn {key, value} ->
      if secret_key?(key, ctx),
        do: {key, mask(value, ctx, depth)},
        else: {walk(key, ctx, depth + 1), walk(value, ctx, depth + 1)}
    end)
  end

  # Handles improper lists too.
  defp walk_list([], _ctx, _depth), do: []

  defp walk_list([head | tail], ctx, depth),
    do: [walk(head, ctx, depth + 1) | walk_list(tail, ctx, depth)]

  defp walk_list(tail, ctx, depth), do: walk(tail, ctx, depth + 1)

  # The value of a secret key: scalars are masked, containers are walked
  # (a `credentials` map still shows its non-secret fields).
  defp mask(value, _ctx, _depth) when is_binary(value) or is_number(value), do: @mask
  defp mask(value, _ctx, _depth) when value in [nil, true, false], do: value
  defp mask(value, _ctx, _depth) when is_atom(value), do: @mask

  defp mask(value, ctx, depth) when is_list(value) do
    if List.ascii_printable?(value, 200) and value != [],
      do: @mask,
      else: walk(value, ctx, depth + 1)
  end

  defp mask(value, ctx, depth), do: walk(value, ctx, depth + 1)

  defp secret_key?(key, ctx) when is_atom(key) and key not in [nil, true, false],
    do: secret_key?(Atom.to_string(key), ctx)

  # A cheap scan for the key words first (keys are short: lower-casing
  # them costs little); the regex only when one is there.
  defp secret_key?(key, %{redactor: %{keys: %Regex{} = keys, key_anchors: anchors}})
       when is_binary(key) and byte_size(key) <= 64,
       do:
         :binary.match(String.downcase(key, :ascii), anchors) != :nomatch and
           Regex.match?(keys, key)

  defp secret_key?(_key, _ctx), do: false

  ## Text

  defp text(text, %{redactor: redactor} = ctx) do
    text
    |> apply_rules(rules_for(text, redactor), ctx)
    |> apply_rules(redactor.custom, ctx)
    |> apply_function(redactor.function)
  end

  # Most strings (names, pids, function names, numbers) can hold no secret:
  # every built-in rule needs one of a few literal anchors (`@`, `eyJ`,
  # `sk-`, `AKIA`, a secret key word in its usual spellings...), found with
  # one `:binary.match/2` scan, or, for card numbers, a run of 13 digits.
  # Only then do the rules run.
  defp rules_for(text, _redactor) when byte_size(text) < 5, do: []
  defp rules_for(_text, %{anchors: nil}), do: []

  defp rules_for(text, redactor) do
    cond do
      :binary.match(text, redactor.anchors) != :nomatch ->
        redactor.rules

      redactor.card != nil and Regex.match?(elem(redactor.card, 0), text) ->
        [elem(redactor.card, 1)]

      true ->
        []
    end
  end

  defp apply_rules(text, rules, ctx) do
    Enum.reduce(rules, text, fn {regex, replacement}, acc ->
      replace(acc, regex, replacement, ctx)
    end)
  end

  defp replace(text, regex, :email, _ctx) do
    if Regex.match?(regex, text) do
      nodes = node_names()
      Regex.replace(regex, text, fn match -> if match in nodes, do: match, else: "[EMAIL]" end)
    else
      text
    end
  end

  defp replace(text, regex, :card, _ctx) do
    Regex.replace(regex, text, fn match -> if card?(match), do: "[CARD]", else: match end)
  end

  defp replace(text, regex, replacement, _ctx), do: Regex.replace(regex, text, replacement)

  defp apply_function(text, nil), do: text

  defp apply_function(text, fun) do
    case fun.(text) do
      result when is_binary(result) -> result
      _ -> "[REDACTION FAILED]"
    end
  rescue
    _ -> "[REDACTION FAILED]"
  catch
    _, _ -> "[REDACTION FAILED]"
  end

  defp node_names do
    Enum.map([node() | Node.list()], &Atom.to_string/1)
  end

  @doc false
  # 13 to 19 digits (separators dropped), a card network's first digit and
  # a valid Luhn checksum.
  def card?(text) do
    digits = for <<c <- text>>, c in ?0..?9, do: c - ?0

    length(digits) in 13..19 and (hd(digits) + ?0) in @card_prefixes and luhn?(digits)
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
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "expected :redact to be a keyword list, got: #{inspect(opts)}"
    end

    for {key, _} <- opts, key not in @option_keys do
      raise ArgumentError,
            "unknown :redact option #{inspect(key)}#{did_you_mean(key)}; known: " <>
              Enum.map_join(@option_keys, ", ", &inspect/1)
    end

    defaults = Keyword.get(opts, :defaults, true)
    patterns = Keyword.get(opts, :patterns, [])
    keys = Keyword.get(opts, :keys, [])
    function = Keyword.get(opts, :function)

    unless is_boolean(defaults) do
      raise ArgumentError,
            "expected :redact option :defaults to be a boolean, got: #{inspect(defaults)}"
    end

    unless is_list(patterns) and Enum.all?(patterns, &pattern?/1) do
      raise ArgumentError,
            "expected :redact option :patterns to be a list of regexes or {regex, replacement} " <>
              "pairs, got: #{inspect(patterns)}"
    end

    unless is_list(keys) and Enum.all?(keys, &((is_binary(&1) and &1 != "") or is_atom(&1))) do
      raise ArgumentError,
            "expected :redact option :keys to be a list of strings or atoms, got: #{inspect(keys)}"
    end

    unless function == nil or is_function(function, 1) do
      raise ArgumentError,
            "expected :redact option :function to be a function of arity 1, got: #{inspect(function)}"
    end

    words = Enum.map(keys, &(&1 |> to_string() |> String.downcase()))
    words = if defaults, do: @secret_words ++ words, else: words

    custom =
      Enum.map(patterns, fn
        %Regex{} = regex -> {regex, @mask}
        {regex, replacement} -> {regex, replacement}
      end)

    rules = if(defaults, do: default_rules(words), else: key_value_rules(words))
    key_anchors = word_anchors(words)
    anchors = if defaults, do: @anchors ++ key_anchors, else: key_anchors

    %__MODULE__{
      defaults: defaults,
      rules: rules,
      anchors: if(rules != [], do: :binary.compile_pattern(anchors)),
      card: if(defaults, do: {~r/\d(?:[ -]?\d){12}/, List.last(rules)}),
      custom: custom,
      keys: key_regex(words),
      key_anchors: if(words != [], do: :binary.compile_pattern(lowercase_anchors(words))),
      function: function,
      extra: %{patterns: length(patterns), keys: length(keys)}
    }
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

  # A word as it may be written in text: api_key, api-key, apikey, Api-Key, ApiKey,
  # in lower case, capitalised or upper case.
  defp word_anchors(words) do
    words
    |> Enum.flat_map(fn word ->
      parts = String.split(word, ["_", "-"])

      for separator <- ["_", "-", ""],
          title? <- [false, true],
          do: Enum.map_join(parts, separator, &if(title?, do: String.capitalize(&1), else: &1))
    end)
    |> Enum.flat_map(&[&1, String.capitalize(&1), String.upcase(&1)])
    |> Enum.uniq()
  end

  defp pattern?(%Regex{}), do: true
  defp pattern?({%Regex{}, replacement}) when is_binary(replacement), do: true
  defp pattern?(_), do: false

  defp did_you_mean(key) do
    @option_keys
    |> Enum.map(&{&1, String.jaro_distance(to_string(key), to_string(&1))})
    |> Enum.max_by(&elem(&1, 1))
    |> case do
      {candidate, score} when score >= 0.8 -> " (did you mean #{inspect(candidate)}?)"
      _ -> ""
    end
  end

  defp key_regex([]), do: nil

  defp key_regex(words) do
    Regex.compile!("(?:^|[^a-z])(?:" <> alternation(words) <> ")$", "i")
  end

  defp alternation(words) do
    words
    |> Enum.uniq()
    |> Enum.sort_by(&(-byte_size(&1)))
    |> Enum.map_join("|", fn word ->
      word |> Regex.escape() |> String.replace(~r/(?:\\-|_)/, "[_-]?")
    end)
  end

  # Rules run in this order: the specific shapes first, then the generic
  # `key=value` rule, so that e.g. `Authorization: Bearer x` keeps its scheme.
  defp default_rules(words) do
    [
      # PEM private keys.
      {~r/-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE KEY-----|\z)/,
       "[REDACTED PRIVATE KEY]"},
      # JSON Web Tokens (header and payload are base64url JSON: "eyJ").
      {~r/\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*/, @mask},
      # Credentials in URLs: scheme://user:password@host.
      {~r{\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@"'<>]*:)[^\s@/"'<>]+@}, "\\1#{@mask}@"},
      # Authorization headers, whatever the scheme.
      {~r/\b((?:proxy-)?authorization(?:["']?\s*(?:=>|[:=])|["']\s*,)\s*["']?)((?:basic|bearer|digest|token|negotiate)\s+)?+(?!\[REDACTED)[^\s"',;}\[\]]+/i,
       "\\1\\2#{@mask}"},
      # Bearer tokens anywhere.
      {~r/\b(bearer)\s+[A-Za-z0-9\-._~+\/]{8,}=*/i, "\\1 #{@mask}"},
      # Cookies: the whole header value.
      {~r/\b((?:set-)?cookie["']?\s*[:=]\s*)[^\r\n"]+/i, "\\1#{@mask}"},
      # API keys by their shape.
      {~r/\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{10,}/, @mask},
      {~r/\bsk-[A-Za-z0-9][A-Za-z0-9_-]{19,}/, @mask},
      {~r/\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b/, @mask},
      {~r/\bgh[pousr]_[A-Za-z0-9]{30,}/, @mask},
      {~r/\bgithub_pat_[A-Za-z0-9_]{20,}/, @mask},
      {~r/\bglpat-[A-Za-z0-9_-]{20,}/, @mask},
      {~r/\bxox[abposr]-[A-Za-z0-9-]{10,}/, @mask},
      {~r/\bAIza[0-9A-Za-z_-]{35}/, @mask},
      {~r/\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}/, @mask}
    ] ++
      key_value_rules(words) ++
      [
        {~r/\b[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b/,
         :email},
        {~r/\b(?:\d[ -]?){12,18}\d\b/, :card}
      ]
  end

  # `password=x`, `api_key: "x"`, `"client_secret":"x"`, `token => 'x'`.
  defp key_value_rules([]), do: []

  defp key_value_rules(words) do
    # Authorization headers have their own rule, which keeps the scheme.
    key = "[A-Za-z0-9_.-]*?(?:" <> alternation(words -- ["authorization"]) <> ")"

    regex =
      Regex.compile!(
        "\\b(" <>
          key <>
          "(?:[\"']?\\s*(?:=>|[:=])|[\"']\\s*,)\\s*)(?!\\[REDACTED|\\?|\\$\\d)(\"[^\"]*\"|'[^']*'|[^\\s\"',;&}\\])]+)",
        "i"
      )

    [
      {regex,
       fn _match, prefix, value ->
         case value do
           "\"" <> _ -> prefix <> "\"" <> @mask <> "\""
           "'" <> _ -> prefix <> "'" <> @mask <> "'"
           _ -> prefix <> @mask
         end
       end}
    ]
  end

  defimpl Inspect do
    def inspect(redactor, _opts) do
      "#Beamlens.Redactor<defaults: #{redactor.defaults}, patterns: #{redactor.extra.patterns}, " <>
        "keys: #{redactor.extra.keys}, function: #{redactor.function != nil}>"
    end
  end
end
