"""A chat for learners: a conversation with the served flow, and an ipywidgets chat box over it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .flow import FlowServer


@dataclass
class ChatSession:
    """A conversation with the served flow; keeps Prompt flow's chat_history between turns."""

    server: FlowServer
    history: list[dict[str, Any]] = field(default_factory=list)

    def ask(self, question: str) -> str:
        answer = self.server.ask(question, self.history)
        self.history.append({"inputs": {"question": question}, "outputs": {"answer": answer}})
        return answer

    def transcript(self) -> str:
        return "\n".join(f"you:   {t['inputs']['question']}\nmodel: {t['outputs']['answer']}" for t in self.history)


EMPTY_ANSWER = "(an empty answer: the model ended its reply at once)"


def chat_box(session: ChatSession, example: str = "") -> Any:
    """An ipywidgets chat: a text field (``example``: a question it suggests), a send button and a scrolling history."""
    import html

    import ipywidgets as widgets

    history = widgets.HTML(
        layout=widgets.Layout(height="260px", overflow_y="auto", border="1px solid #ccc", padding="6px")
    )
    hint = f"Ask a question, e.g. {example}" if example else "Ask a question…"
    question = widgets.Text(placeholder=hint, layout=widgets.Layout(width="70%"))
    send = widgets.Button(description="Send", button_style="primary")

    def shown(answer: str) -> str:
        return html.escape(answer) if answer.strip() else f"<i>{EMPTY_ANSWER}</i>"

    def render() -> None:
        rows = [
            f"<p><b>you</b>: {html.escape(t['inputs']['question'])}<br>"
            f"<b>model</b>: {shown(t['outputs']['answer'])}</p>"
            for t in session.history
        ]
        history.value = "".join(rows)

    def on_send(_: Any) -> None:
        text = question.value.strip()
        if not text:
            return
        question.value = ""
        send.disabled = True
        try:
            session.ask(text)
        except Exception as error:  # shown in the box; the session goes on
            history.value += f"<p style='color:#b00'>{html.escape(str(error))}</p>"
        else:
            render()
        finally:
            send.disabled = False

    send.on_click(on_send)
    question.on_submit(on_send)
    render()
    return widgets.VBox([history, widgets.HBox([question, send])])
