# A minimal stand-in for the `:telemetry` library, compiled only when the real
# one is absent (Hex is unreachable where BeamLens is developed). It follows
# telemetry 1.x: attach/4, attach_many/4, detach/1, execute/3, span/3 and
# list_handlers/1; a handler that raises is detached. The suite also passes
# against the real library: put it on ERL_LIBS with a separate build path.
unless Code.ensure_loaded?(:telemetry) do
  defmodule :telemetry do
    @moduledoc false
    require Logger

    @table :beamlens_test_telemetry_handlers

    def attach(handler_id, event_name, function, config) do
      attach_many(handler_id, [event_name], function, config)
    end

    def attach_many(handler_id, event_names, function, config)
        when is_function(function, 4) and is_list(event_names) do
      ensure_table()

      if :ets.insert_new(@table, {handler_id, event_names, function, config}) do
        :ok
      else
        {:error, :already_exists}
      end
    end

    def detach(handler_id) do
      ensure_table()

      case :ets.take(@table, handler_id) do
        [] -> {:error, :not_found}
        [_] -> :ok
      end
    end

    def list_handlers(prefix) do
      ensure_table()

      for {id, names, function, config} <- :ets.tab2list(@table),
          name <- names,
          List.starts_with?(name, prefix) do
        %{id: id, event_name: name, function: function, config: config}
      end
    end

    def execute(event_name, measurements, metadata) when is_map(measurements) do
      ensure_table()

      for {id, names, function, config} <- :ets.tab2list(@table), event_name in names do
        try do
          function.(event_name, measurements, metadata, config)
        catch
          kind, reason ->
            :ets.delete(@table, id)

            Logger.error(
              "Handler #{inspect(id)} has failed and has been detached. " <>
                Exception.format(kind, reason, __STACKTRACE__)
            )
        end
      end

      :ok
    end

    def execute(event_name, value, metadata) when is_number(value) do
      execute(event_name, %{value: value}, metadata)
    end

    def span(event_prefix, start_metadata, span_function) do
      start_time = System.monotonic_time()
      context = make_ref()
      start_metadata = Map.put(start_metadata, :telemetry_span_context, context)

      execute(
        event_prefix ++ [:start],
        %{monotonic_time: start_time, system_time: System.system_time()},
        start_metadata
      )

      try do
        {result, extra, stop_metadata} =
          case span_function.() do
            {result, stop_metadata} -> {result, %{}, stop_metadata}
            {result, extra, stop_metadata} -> {result, extra, stop_metadata}
          end

        stop_time = System.monotonic_time()

        execute(
          event_prefix ++ [:stop],
          Map.merge(extra, %{duration: stop_time - start_time, monotonic_time: stop_time}),
          Map.put(stop_metadata, :telemetry_span_context, context)
        )

        result
      catch
        kind, reason ->
          stop_time = System.monotonic_time()

          execute(
            event_prefix ++ [:exception],
            %{duration: stop_time - start_time, monotonic_time: stop_time},
            Map.merge(start_metadata, %{kind: kind, reason: reason, stacktrace: __STACKTRACE__})
          )

          :erlang.raise(kind, reason, __STACKTRACE__)
      end
    end

    # The table needs an owner that outlives the caller.
    defp ensure_table do
      if :ets.whereis(@table) == :undefined do
        caller = self()

        owner =
          spawn(fn ->
            try do
              :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
              send(caller, {:telemetry_table, self()})
              Process.sleep(:infinity)
            rescue
              ArgumentError -> send(caller, {:telemetry_table, self()})
            end
          end)

        receive do
          {:telemetry_table, ^owner} -> :ok
        end
      end

      :ok
    end
  end
end
