# Compiled only when Phoenix LiveDashboard is a dependency of the app (it is
# an optional dependency of BeamLens), like the pages of ecto_psql_extras or
# Oban: without it, this file defines nothing.
if Code.ensure_loaded?(Phoenix.LiveDashboard.PageBuilder) do
  defmodule Beamlens.Dashboard do
    @moduledoc """
    A BeamLens page for Phoenix LiveDashboard: the watchers and their state,
    the recent alerts and insights, the token budget, an "Investigate" box
    and pause/resume per watcher, refreshed live.

    Add it to the `live_dashboard` route of your router:

        live_dashboard "/dashboard", additional_pages: [beamlens: Beamlens.Dashboard]

    Options, given as `beamlens: {Beamlens.Dashboard, opts}`:

      * `:instance` - the `:name` of the BeamLens instance (default `Beamlens`).
      * `:pause` - whether the page offers pause/resume per watcher (default
        `true`). Pausing only silences a BeamLens watcher; nothing on the
        page changes the host.

    The page shows what the operator API returns (`Beamlens.status/1`,
    `Beamlens.alerts/1`, `Beamlens.insights/1`), passed through
    `Beamlens.Redactor` once more before it is rendered; provider
    configuration (API keys, URLs) is never read. It follows the node
    selected in LiveDashboard, calling BeamLens there over distribution.
    The investigation runs in a separate process, so the page stays
    responsive while the model works.
    """
    use Phoenix.LiveDashboard.PageBuilder, refresher?: true

    alias Beamlens.Redactor

    @alerts_shown 50
    @insights_shown 20
    @question_max 500
    @investigate_timeout 60_000
    @call_timeout 10_000

    @impl true
    def init(opts) do
      unless Keyword.keyword?(opts) do
        raise ArgumentError,
              "expected Beamlens.Dashboard's options to be a keyword list, got: #{inspect(opts)}"
      end

      case Keyword.keys(opts) -- [:instance, :pause] do
        [] ->
          :ok

        [key | _] ->
          raise ArgumentError,
                "unknown Beamlens.Dashboard option #{inspect(key)}; known: :instance, :pause"
      end

      instance = Keyword.get(opts, :instance, Beamlens)
      pause = Keyword.get(opts, :pause, true)

      unless is_atom(instance) and is_boolean(pause) do
        raise ArgumentError,
              "expected Beamlens.Dashboard's :instance to be an atom and :pause a boolean, " <>
                "got: #{inspect(opts)}"
      end

      {:ok, %{instance: instance, pause: pause}, [{:process, instance}]}
    end

    @impl true
    def menu_link(%{instance: instance}, capabilities) do
      if instance in capabilities.processes,
        do: {:ok, "BeamLens"},
        else: {:disabled, "BeamLens", "https://hexdocs.pm/beamlens/readme.html"}
    end

    @impl true
    def mount(_params, session, socket) do
      socket =
        assign(socket,
          instance: session.instance,
          pause_allowed: session.pause,
          selected: nil,
          notice: nil,
          investigation: nil,
          task: nil
        )

      {:ok, load(socket)}
    end

    @impl true
    def handle_refresh(socket), do: {:noreply, load(socket)}

    @impl true
    def handle_event("show_alert", %{"id" => id}, socket) when is_binary(id),
      do: {:noreply, assign(socket, selected: id)}

    def handle_event("hide_alert", _params, socket), do: {:noreply, assign(socket, selected: nil)}

    def handle_event(action, %{"watcher" => name}, socket)
        when action in ["pause", "resume"] and is_binary(name) do
      %{instance: instance, pause_allowed: allowed} = socket.assigns

      # The name is matched against the running watchers: no atom is made
      # from what the browser sent.
      watcher = Enum.find(socket.assigns.watchers, &(Atom.to_string(&1.name) == name))

      notice =
        cond do
          not allowed ->
            "Pausing is turned off for this page."

          watcher == nil ->
            "No running watcher is named #{inspect(name)}."

          true ->
            fun = if action == "pause", do: :pause, else: :resume

            case call(socket, fun, [watcher.name, [instance: instance]]) do
              :ok -> "#{String.capitalize(action)}d #{inspect(watcher.name)}."
              {:error, error} -> "Could not #{action} #{inspect(watcher.name)}: #{message(error)}"
            end
        end

      {:noreply, socket |> assign(notice: notice) |> load()}
    end

    def handle_event("investigate", params, %{assigns: %{task: nil}} = socket) do
      question =
        case params["question"] do
          q when is_binary(q) -> q |> String.trim() |> String.slice(0, @question_max)
          _ -> ""
        end

      question = if question == "", do: nil, else: question
      node = socket.assigns.page.node
      args = [question, [instance: socket.assigns.instance, timeout: @investigate_timeout]]
      parent = self()
      ref = make_ref()

      {_pid, monitor} =
        spawn_monitor(fn ->
          result = rpc(node, :investigate, args, @investigate_timeout + @call_timeout)
          send(parent, {__MODULE__, ref, result})
        end)

      {:noreply,
       assign(socket,
         task: {ref, monitor},
         investigation: {:running, question}
       )}
    end

    def handle_event("investigate", _params, socket), do: {:noreply, socket}

    @impl true
    def handle_info({__MODULE__, ref, result}, %{assigns: %{task: {ref, monitor}}} = socket) do
      Process.demonitor(monitor, [:flush])

      investigation =
        case result do
          {:ok, report} -> {:done, Redactor.redact(report)}
          {:error, error} -> {:failed, message(error)}
        end

      {:noreply, socket |> assign(task: nil, investigation: investigation) |> load()}
    end

    def handle_info(
          {:DOWN, monitor, :process, _, reason},
          %{assigns: %{task: {_, monitor}}} = socket
        ) do
      failed = {:failed, "the investigation stopped: #{message(reason)}"}
      {:noreply, assign(socket, task: nil, investigation: failed)}
    end

    def handle_info(_message, socket), do: {:noreply, socket}

    ## Data

    defp load(socket) do
      opts = [instance: socket.assigns.instance]

      with {:ok, status} <- call(socket, :status, [opts]),
           {:ok, alerts} <- call(socket, :alerts, [opts ++ [limit: @alerts_shown]]),
           {:ok, insights} <- call(socket, :insights, [opts ++ [limit: @insights_shown]]) do
        # Once more through the redactor, whatever the node's configuration.
        %{status: status, alerts: alerts, insights: insights} =
          Redactor.redact(%{status: status, alerts: alerts, insights: insights})

        assign(socket,
          error: nil,
          status: status,
          watchers: status.watchers,
          alerts: alerts,
          insights: insights
        )
      else
        {:error, error} ->
          assign(socket,
            error: message(error),
            status: nil,
            watchers: [],
            alerts: [],
            insights: []
          )
      end
    end

    # The operator API on the node LiveDashboard shows. status/alerts/
    # insights raise when the instance is not running there.
    defp call(socket, fun, args) do
      case rpc(socket.assigns.page.node, fun, args, @call_timeout) do
        {:error, _} = error -> error
        :ok -> :ok
        result when fun in [:status, :alerts, :insights] -> {:ok, result}
        other -> other
      end
    end

    defp rpc(node, fun, args, timeout) do
      if node == node() do
        apply(Beamlens, fun, args)
      else
        :erpc.call(node, Beamlens, fun, args, timeout)
      end
    rescue
      error -> {:error, error}
    catch
      kind, reason -> {:error, {kind, reason}}
    end

    defp message(%{__exception__: true} = error),
      do: Redactor.redact_text(Exception.message(error))

    defp message(text) when is_binary(text), do: Redactor.redact_text(text)
    defp message(other), do: Redactor.redact_text(inspect(other, limit: 10))

    ## Rendering

    @impl true
    def render(assigns) do
      ~H"""
      <div id="beamlens-dashboard" class="beamlens-dashboard">
        <div :if={@error} id="beamlens-error" class="alert alert-danger">
          BeamLens (<%= inspect(@instance) %>) is not available on <%= @page.node %>: <%= @error %>
        </div>
        <div :if={@notice} id="beamlens-notice" class="alert alert-info"><%= @notice %></div>

        <%= if @status do %>
          <.summary status={@status} alerts={@alerts} />
          <.watchers watchers={@watchers} pause_allowed={@pause_allowed} />
          <.alerts alerts={@alerts} selected={@selected} />
          <.insights insights={@insights} alerts={@alerts} />
          <.investigate investigation={@investigation} />
        <% end %>
      </div>
      """
    end

    defp summary(assigns) do
      status = assigns.status
      since = DateTime.add(DateTime.utc_now(), -3600, :second)

      assigns =
        assign(assigns,
          counts: Enum.frequencies_by(status.watchers, & &1.state),
          recent: Enum.count(assigns.alerts, &(DateTime.compare(seen_at(&1), since) != :lt)),
          budget: status.budget
        )

      ~H"""
      <div class="row" id="beamlens-summary">
        <div class="col-sm-6 col-lg-3 mb-4">
          <div class="banner-card">
            <h6 class="banner-card-title">Watchers</h6>
            <div class="banner-card-value">
              <%= length(@status.watchers) %>
              <span
                :for={state <- [:healthy, :observing, :warning, :critical]}
                :if={Map.get(@counts, state, 0) > 0}
                class={"badge badge-pill #{state_class(state)} ml-1"}
                style="font-size: 0.6em; vertical-align: middle;"
              >
                <%= Map.get(@counts, state) %> <%= state %>
              </span>
            </div>
          </div>
        </div>
        <div class="col-sm-6 col-lg-3 mb-4">
          <div class="banner-card">
            <h6 class="banner-card-title">Alerts in the last hour</h6>
            <div class="banner-card-value" id="beamlens-alert-count"><%= @recent %></div>
          </div>
        </div>
        <div class="col-sm-6 col-lg-3 mb-4">
          <div class="banner-card">
            <h6 class="banner-card-title">Tokens this hour</h6>
            <div class="banner-card-value" id="beamlens-tokens"><%= number(@budget.used_this_hour) %></div>
          </div>
        </div>
        <div class="col-sm-6 col-lg-3 mb-4">
          <div class="banner-card">
            <h6 class="banner-card-title">Budget left this hour</h6>
            <div class="banner-card-value" id="beamlens-budget">
              <%= budget_left(@budget) %>
            </div>
          </div>
        </div>
      </div>
      <p class="text-muted small" id="beamlens-providers">
        Node <%= @status.node %> ·
        <%= if @status.providers == [] do %>
          no model provider configured: rules only
        <% else %>
          <span :for={p <- @status.providers} class="mr-2">
            <%= p.provider %><%= if p.model, do: " (#{p.model})" %>:
            <span class={"badge #{breaker_class(p.breaker)}"}><%= breaker_text(p.breaker) %></span>
          </span>
        <% end %>
        <%= if @status.coordinator do %>
          · coordinator <%= if @status.coordinator.leader?, do: "(leader)", else: "(follower)" %>
        <% end %>
      </p>
      """
    end

    defp watchers(assigns) do
      ~H"""
      <div class="card mb-4">
        <div class="card-body">
          <h5 class="card-title">Watchers</h5>
          <table class="table table-hover table-sm mt-2" id="beamlens-watchers">
            <thead>
              <tr>
                <th>Watcher</th>
                <th>State</th>
                <th>Reason</th>
                <th>Mode</th>
                <th>Last check</th>
                <th>Firing</th>
                <th class="text-right">Alerts</th>
                <th :if={@pause_allowed}></th>
              </tr>
            </thead>
            <tbody>
              <tr :for={w <- @watchers} id={"beamlens-watcher-#{w.name}"} data-watcher={w.name} data-state={w.state}>
                <td class="font-weight-bold"><%= w.name %></td>
                <td>
                  <span class={"badge #{state_class(w.state)}"}><%= w.state %></span>
                  <span :if={w.paused} class="badge badge-secondary">
                    paused<%= if w.paused_until, do: " until #{time(w.paused_until)}" %>
                  </span>
                </td>
                <td class="small"><%= w.reason %></td>
                <td class="small">
                  <%= if w.mode == :model do %>
                    model
                  <% else %>
                    rules only<span :if={w.mode_reason} class="text-muted">: <%= w.mode_reason %></span>
                  <% end %>
                </td>
                <td class="small">
                  <%= if w.last_check do %>
                    <%= time(w.last_check.at) %> · <%= w.last_check.reason %> · <%= w.last_check.outcome %>
                    <span :if={w.last_check.tokens > 0} class="text-muted">(<%= number(w.last_check.tokens) %> tokens)</span>
                  <% else %>
                    <span class="text-muted">none<%= if w.last_tick_at, do: " · last snapshot #{time(w.last_tick_at)}" %></span>
                  <% end %>
                </td>
                <td class="small">
                  <code :for={metric <- w.firing} class="mr-1"><%= metric %></code>
                  <span :if={w.firing == []} class="text-muted">–</span>
                </td>
                <td class="text-right"><%= w.alerts_fired %></td>
                <td :if={@pause_allowed} class="text-right">
                  <button
                    :if={!w.paused}
                    class="btn btn-sm btn-outline-secondary"
                    phx-click="pause"
                    phx-value-watcher={w.name}
                  >
                    Pause
                  </button>
                  <button
                    :if={w.paused}
                    class="btn btn-sm btn-primary"
                    phx-click="resume"
                    phx-value-watcher={w.name}
                  >
                    Resume
                  </button>
                </td>
              </tr>
            </tbody>
          </table>
        </div>
      </div>
      """
    end

    defp alerts(assigns) do
      assigns = assign(assigns, shown: Enum.find(assigns.alerts, &(&1.id == assigns.selected)))

      ~H"""
      <div class="card mb-4">
        <div class="card-body">
          <h5 class="card-title">Recent alerts</h5>
          <p :if={@alerts == []} class="text-muted" id="beamlens-no-alerts">No alerts.</p>
          <table :if={@alerts != []} class="table table-hover table-sm mt-2" id="beamlens-alerts">
            <thead>
              <tr>
                <th>Severity</th>
                <th>Watcher</th>
                <th>Anomaly</th>
                <th>Summary</th>
                <th>Entities</th>
                <th>Last seen</th>
                <th class="text-right">Seen</th>
              </tr>
            </thead>
            <tbody>
              <tr
                :for={a <- @alerts}
                id={"beamlens-alert-#{a.id}"}
                data-anomaly-type={a.anomaly_type}
                phx-click="show_alert"
                phx-value-id={a.id}
                style="cursor: pointer;"
                class={if a.id == @selected, do: "table-active"}
              >
                <td><span class={"badge #{severity_class(a.severity)}"}><%= a.severity %></span></td>
                <td><%= a.watcher %></td>
                <td><code><%= a.anomaly_type %></code></td>
                <td class="small"><%= a.summary %></td>
                <td class="small"><.entities entities={a.entities} /></td>
                <td class="small"><%= time(seen_at(a)) %></td>
                <td class="text-right"><%= a.occurrences %>×</td>
              </tr>
            </tbody>
          </table>
          <.alert_detail :if={@shown} alert={@shown} />
        </div>
      </div>
      """
    end

    defp alert_detail(assigns) do
      ~H"""
      <div class="card border mt-3" id="beamlens-alert-detail">
        <div class="card-body">
          <button type="button" class="close" phx-click="hide_alert" aria-label="Close">×</button>
          <h6 class="card-title">
            <span class={"badge #{severity_class(@alert.severity)}"}><%= @alert.severity %></span>
            <%= @alert.watcher %> · <code><%= @alert.anomaly_type %></code>
            <span class="text-muted small">
              · <%= if @alert.source == :llm, do: "written by the model", else: "fired by the rules" %>
              · first seen <%= time(@alert.detected_at) %>
            </span>
          </h6>
          <p class="mb-2"><%= @alert.summary %></p>
          <dl class="mb-0">
            <dt>Observation <span class="text-muted small">(measured)</span></dt>
            <dd style="white-space: pre-wrap;"><%= blank(@alert.observation) %></dd>
            <dt>Hypothesis <span class="text-muted small">(a possible explanation, not a fact)</span></dt>
            <dd style="white-space: pre-wrap;"><%= blank(@alert.hypothesis) %></dd>
            <dt>Evidence</dt>
            <dd>
              <table class="table table-sm mb-1">
                <tr :for={{name, value} <- evidence_values(@alert)}>
                  <td><code><%= name %></code></td>
                  <td class="small"><%= value %></td>
                </tr>
              </table>
              <span :if={snapshots(@alert) != []} class="text-muted small">
                snapshots <%= Enum.join(snapshots(@alert), ", ") %>
              </span>
            </dd>
            <dt>Entities</dt>
            <dd><.entities entities={@alert.entities} /></dd>
            <dt :if={@alert.escalations != []}>Escalations</dt>
            <dd :if={@alert.escalations != []}>
              <div :for={e <- @alert.escalations} class="small">
                <%= time(e.at) %> → <%= e.severity %>: <%= e.summary %>
              </div>
            </dd>
          </dl>
        </div>
      </div>
      """
    end

    defp insights(assigns) do
      by_id = Map.new(assigns.alerts, &{&1.id, &1})
      assigns = assign(assigns, by_id: by_id)

      ~H"""
      <div class="card mb-4">
        <div class="card-body">
          <h5 class="card-title">Insights</h5>
          <p :if={@insights == []} class="text-muted" id="beamlens-no-insights">
            No insights: the coordinator has not connected any alerts.
          </p>
          <div :for={i <- @insights} class="border-top pt-2 mb-2" id={"beamlens-insight-#{i.id}"}>
            <span class={"badge #{severity_class(i.severity)}"}><%= i.severity %></span>
            <strong><%= i.summary %></strong>
            <span class="text-muted small">
              · <%= i.correlation_type %> · confidence <%= percent(i.confidence) %> · updated <%= time(i.updated_at) %>
            </span>
            <div :if={i.root_cause_hypothesis} class="small">
              <em>Hypothesis:</em> <%= i.root_cause_hypothesis %>
            </div>
            <div class="small">
              Groups <%= i.alert_count %> alert(s):
              <span :for={id <- i.alert_ids} class="mr-2">
                <%= case Map.fetch(@by_id, id) do %>
                  <% {:ok, a} -> %>
                    <a href="#" phx-click="show_alert" phx-value-id={id}><%= a.watcher %>/<%= a.anomaly_type %></a>
                  <% :error -> %>
                    <span class="text-muted"><%= String.slice(id, 0, 8) %></span>
                <% end %>
              </span>
            </div>
          </div>
        </div>
      </div>
      """
    end

    defp investigate(assigns) do
      ~H"""
      <div class="card mb-4">
        <div class="card-body">
          <h5 class="card-title">Investigate</h5>
          <form phx-submit="investigate" id="beamlens-investigate" class="form-inline mb-2">
            <input
              type="text"
              name="question"
              class="form-control mr-2"
              style="flex: 1;"
              maxlength="500"
              placeholder="A question (optional), e.g. why is memory growing?"
              disabled={match?({:running, _}, @investigation)}
            />
            <button type="submit" class="btn btn-primary" disabled={match?({:running, _}, @investigation)}>
              Investigate
            </button>
          </form>
          <p class="text-muted small mb-0">
            Read-only: fresh snapshots judged by the rules and, with a model, its answer. Fires no alert.
          </p>
          <%= case @investigation do %>
            <% nil -> %>
            <% {:running, _} -> %>
              <p id="beamlens-investigating" class="mt-2">Investigating…</p>
            <% {:failed, message} -> %>
              <div id="beamlens-investigation-error" class="alert alert-danger mt-2"><%= message %></div>
            <% {:done, report} -> %>
              <.report report={report} />
          <% end %>
        </div>
      </div>
      """
    end

    defp report(assigns) do
      ~H"""
      <div id="beamlens-report" class="mt-3">
        <h6>
          <%= if @report.question, do: "“#{@report.question}”", else: "General look" %>
          <span class="text-muted small">
            · <%= time(@report.started_at) %> · <%= @report.duration_ms %> ms ·
            <%= if @report.model_used do %>
              model, <%= number(@report.tokens.input + @report.tokens.output) %> tokens
            <% else %>
              no model: <%= @report.no_model_reason %>
            <% end %>
          </span>
        </h6>
        <table class="table table-sm">
          <tr :for={d <- @report.domains}>
            <td class="font-weight-bold"><%= d.watcher %></td>
            <td><span class={"badge #{state_class(d.state)}"}><%= d.state %></span></td>
            <td class="small">
              <span :for={{k, v} <- Enum.sort(d.key_figures)} class="mr-3"><%= k %>: <strong><%= v %></strong></span>
            </td>
          </tr>
        </table>
        <h6 :if={@report.findings != []}>Findings (measured)</h6>
        <div :for={f <- @report.findings} class="small mb-1">
          <span class={"badge #{severity_class(f.severity)}"}><%= f.severity %></span>
          <%= f.watcher %> · <code><%= f.anomaly_type %></code> · <%= f.summary %>
          <.entities entities={f.entities} />
        </div>
        <p :if={@report.findings == []} class="small text-muted">The rules found nothing wrong.</p>
        <div :if={@report.summary} class="mt-2">
          <h6>The model's answer</h6>
          <p style="white-space: pre-wrap;"><%= @report.summary %></p>
          <p :if={@report.hypothesis} class="small" style="white-space: pre-wrap;">
            <em>Hypothesis:</em> <%= @report.hypothesis %>
          </p>
        </div>
      </div>
      """
    end

    defp entities(assigns) do
      ~H"""
      <span :for={{type, id} <- @entities} class="badge badge-light border mr-1"><%= type %>: <%= id %></span>
      """
    end

    ## Formatting

    defp state_class(:healthy), do: "badge-success"
    defp state_class(:observing), do: "badge-info"
    defp state_class(:warning), do: "badge-warning"
    defp state_class(:critical), do: "badge-danger"
    defp state_class(_), do: "badge-secondary"

    defp severity_class(:critical), do: "badge-danger"
    defp severity_class(:warning), do: "badge-warning"
    defp severity_class(_), do: "badge-info"

    defp breaker_class(:closed), do: "badge-success"
    defp breaker_class(:half_open), do: "badge-warning"
    defp breaker_class(_), do: "badge-danger"

    defp breaker_text(:closed), do: "available"
    defp breaker_text(:half_open), do: "recovering"
    defp breaker_text(_), do: "unavailable"

    defp budget_left(%{left: :infinity}), do: "no limit"

    defp budget_left(%{left: left, limit: limit}),
      do: "#{number(left)} of #{number(limit)}"

    defp seen_at(alert), do: alert.last_seen_at || alert.detected_at

    defp time(%DateTime{} = at), do: Calendar.strftime(at, "%H:%M:%S UTC")
    defp time(_), do: "–"

    defp number(n) when is_integer(n) do
      n
      |> Integer.to_string()
      |> String.reverse()
      |> String.replace(~r/(\d{3})(?=\d)/, "\\1,")
      |> String.reverse()
    end

    defp number(other), do: to_string(other)

    defp percent(f) when is_number(f), do: "#{round(f * 100)}%"
    defp percent(_), do: "–"

    defp blank(text) when text in [nil, ""], do: "–"
    defp blank(text), do: text

    defp evidence_values(%{evidence: %{values: values}}) when is_map(values) do
      values
      |> Enum.sort_by(fn {k, _} -> to_string(k) end)
      |> Enum.map(fn {k, v} -> {k, value(v)} end)
    end

    defp evidence_values(_), do: []

    defp snapshots(%{evidence: %{snapshot_ids: ids}}) when is_list(ids), do: Enum.take(ids, 5)
    defp snapshots(_), do: []

    defp value(%{value: v} = m) do
      extra =
        m
        |> Map.delete(:value)
        |> Enum.reject(fn {_, x} -> x in [nil, ""] end)
        |> Enum.map_join(", ", fn {k, x} -> "#{k} #{short(x)}" end)

      if extra == "", do: short(v), else: "#{short(v)} (#{extra})"
    end

    defp value(v), do: short(v)

    defp short(v) when is_binary(v), do: String.slice(v, 0, 200)
    defp short(v) when is_float(v), do: :erlang.float_to_binary(v, [:compact, decimals: 3])
    defp short(v) when is_integer(v) or is_atom(v), do: to_string(v)
    defp short(v), do: inspect(v, limit: 10, printable_limit: 200)
  end
end
